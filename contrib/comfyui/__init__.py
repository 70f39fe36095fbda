"""ComfyUI-HyReSR: lets ComfyUI's own upscale nodes load HyReSR models.

ComfyUI's "Load Upscale Model" node loads every upscale model through spandrel's global
``MAIN_REGISTRY``. Importing this package (ComfyUI imports every folder in custom_nodes/ at
startup) adds the HyReSR architecture to that registry, from the network file shipped next to
this one. No node of its own: load a HyReSR .safetensors / .pth with "Load Upscale Model" and
upscale with "Upscale Image (using Model)". Once spandrel itself knows HyReSR this does nothing.
"""

from .hyresr_arch import register_spandrel

register_spandrel()

# empty, but present: ComfyUI reports a custom node folder without it as failed to import
NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
