"""What every suite's tests share (testonly; //tools:registry_testing): no test lives here.

    fake_gcs   a fake-gcs-server process (drained stderr, explicit port)
    fixtures   pytest fixtures: the fake GCS for a session, signing keys, a registry per backend
    releases   fabricated release bundles (synthetic bytes, no torch)
    cli        running a modelgate command in-process, one-line errors, tampering, forked writers
    endpoints  loopback servers that accept and then stall or trickle (deadline tests)
"""
