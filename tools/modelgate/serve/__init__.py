"""The reference inference service: pulls a tag's build when notified (or on a poll), verifies it,
warms it up on its golden data and swaps it in atomically. See deployment.py for the rollout,
app.py for the HTTP API and modelgate/cli/serve.py for the command line."""
