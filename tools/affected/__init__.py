"""affected: the test targets a change can affect (CI tooling; standard library only).

    lib    the logic: git, bazel query, the lock entry by entry, fail-open rules
    main   the command line behind `bazel run //tools:affected`
"""
