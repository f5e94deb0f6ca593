"""tools/bench/serving_bench.py's parsers: wrk's result line (from the script's Lua `done`) and
/proc. A misread would publish wrong requests/s, latencies or memory. No timings here."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).absolute().parents[2] / "tools" / "bench"))

import serving_bench  # noqa: E402 - after the path it is found on

WRK = """\
Running 10s test @ http://127.0.0.1:4567/v2/models/tiny_transformer/infer
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.72ms  520.11us  11.51ms   80.10%
  23432 requests in 10.00s, 9.61MB read
Requests/sec:   2343.02
Transfer/sec:      0.96MB
SERVING_BENCH {"requests":23432,"duration_us":10001234,"bytes":10077000,"connect_errors":0,"read_errors":0,"write_errors":0,"non_2xx":3,"timeouts":1,"p50_us":1503,"p90_us":2248,"p99_us":3742,"max_us":11508,"mean_us":1724.3}
"""


def test_wrk_line_gives_rate_latencies_and_errors():
    r = serving_bench.parse_wrk(WRK)
    assert r["requests"] == 23432
    assert r["rps"] == pytest.approx(23432 / 10.001234)
    assert (r["p50_ms"], r["p90_ms"], r["p99_ms"], r["max_ms"]) == (1.503, 2.248, 3.742, 11.508)
    assert r["mean_ms"] == pytest.approx(1.7243)
    assert r["errors"] == 4 and r["non_2xx"] == 3


def test_wrk_without_its_result_line_is_an_error():
    with pytest.raises(ValueError, match="no result line"):
        serving_bench.parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_the_lua_script_prints_the_line_the_parser_reads():
    lua = serving_bench.WRK_LUA % {"body": '"/tmp/body.json"', "mark": serving_bench.WRK_MARK}
    assert 'io.open("/tmp/body.json", "rb")' in lua
    assert serving_bench.WRK_MARK + '{\\"requests\\":%d' in lua


def test_proc_status_and_maps():
    status = "Name:\tpython3.11\nVmHWM:\t  180224 kB\nVmRSS:\t  129024 kB\nThreads:\t3\n"
    assert serving_bench.parse_proc_status(status) == {"VmRSS": 126.0, "VmHWM": 176.0}
    assert serving_bench.parse_proc_status("Name:\tx\n") == {"VmRSS": None, "VmHWM": None}
    maps = "7f0-7f1 r-xp 0 08:01 1 /site/torch/lib/libtorch_cpu.so\n"
    assert serving_bench.torch_mapped(maps)
    assert not serving_bench.torch_mapped("7f0-7f1 r-xp 0 08:01 1 /site/onnxruntime/capi/libonnxruntime.so.1\n")
