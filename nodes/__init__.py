"""Thin ComfyUI adapters over `stream_r1` (V1 node API).

Importing does no work: no model loads, no device queries, no folder scans (the model list is read when
ComfyUI asks for INPUT_TYPES). Every ComfyUI service goes through `host.py`, imported lazily.
"""
from .decode import StreamR1Decode
from .generate import StreamR1Continue, StreamR1Generate, StreamR1GenerateToFile
from .loader import StreamR1ModelLoader
from .options import StreamR1Options
from .state import StreamR1LoadState, StreamR1SaveState
from .telemetry import StreamR1Telemetry
from .timeline import StreamR1Timeline
from .tts import StreamR1TestTimeScaling
from .reward import StreamR1RewardLoader, StreamR1RewardSaliency, StreamR1RewardScore
from .shapes import StreamR1ShapesDemoLoader

NODE_CLASS_MAPPINGS = {
    "StreamR1ModelLoader": StreamR1ModelLoader,
    "StreamR1ShapesDemoLoader": StreamR1ShapesDemoLoader,
    "StreamR1Options": StreamR1Options,
    "StreamR1Generate": StreamR1Generate,
    "StreamR1Continue": StreamR1Continue,
    "StreamR1GenerateToFile": StreamR1GenerateToFile,
    "StreamR1Decode": StreamR1Decode,
    "StreamR1Timeline": StreamR1Timeline,
    "StreamR1SaveState": StreamR1SaveState,
    "StreamR1LoadState": StreamR1LoadState,
    "StreamR1Telemetry": StreamR1Telemetry,
    "StreamR1RewardLoader": StreamR1RewardLoader,
    "StreamR1RewardScore": StreamR1RewardScore,
    "StreamR1RewardSaliency": StreamR1RewardSaliency,
    "StreamR1TestTimeScaling": StreamR1TestTimeScaling,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "StreamR1ModelLoader": "Stream-R1 Load Model",
    "StreamR1ShapesDemoLoader": "Stream-R1 Shapes Demo Loader",
    "StreamR1Options": "Stream-R1 Options",
    "StreamR1Generate": "Stream-R1 Generate",
    "StreamR1Continue": "Stream-R1 Continue",
    "StreamR1GenerateToFile": "Stream-R1 Generate to File",
    "StreamR1Decode": "Stream-R1 Decode (streaming VAE)",
    "StreamR1Timeline": "Stream-R1 Prompt Timeline",
    "StreamR1SaveState": "Stream-R1 Save State",
    "StreamR1LoadState": "Stream-R1 Load State",
    "StreamR1Telemetry": "Stream-R1 Drift Telemetry",
    "StreamR1RewardLoader": "Stream-R1 Load Reward Model",
    "StreamR1RewardScore": "Stream-R1 Reward Score",
    "StreamR1RewardSaliency": "Stream-R1 Reward Saliency",
    "StreamR1TestTimeScaling": "Stream-R1 Test-Time Scaling",
}
