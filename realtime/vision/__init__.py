"""Face geometry on frames: landmark topology, tracking, FFHQ alignment and compositing back into the frame.
Imports without av, aiortc, pyvirtualcam or mediapipe (MediaPipe is loaded when a tracker is built)."""
