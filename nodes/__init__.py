"""Thin ComfyUI adapters over `stream_r1` (V1 node API). The node classes arrive with the nodes issue."""
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}
