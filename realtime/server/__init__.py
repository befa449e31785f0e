"""The live WebRTC server: the aiohttp app and its page, sessions and their data-channel messages, per-peer workers
on the pipeline's stage runner, aiortc encoder tuning and a loopback test client."""
