"""Video in and out: sources (files, cameras, network streams, synthetic clips) and sinks (files, RTMP, virtual
camera, null). Everything here speaks :class:`realtime.frames.Frame` / :class:`realtime.frames.Output`."""
