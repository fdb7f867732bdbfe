"""ComfyUI entry point of the Stream-R1 node pack.

ComfyUI imports this folder as a package under a path-derived name, so everything below is relative.
Importing does no work: no model loads, no device queries.
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
