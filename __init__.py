"""ComfyUI entry point of the Stream-R1 node pack.

ComfyUI imports this folder as a package under a path-derived name, so everything below is relative.
Importing does no work: no model loads, no device queries.
"""
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
else:   # imported as a lone module: pytest in a clone whose folder name is no identifier (ComfyUI-Stream-R1)
    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = {}, {}

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
