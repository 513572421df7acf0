"""LoRA: read every common key format, stack several on a transformer with weights, write our own files.

keys       the key names of the formats met in the wild, and a file's format from them
foreign    which other model a LoRA was made for (FLUX.1, SDXL, Wan...), from its module names
normalize  any format's tensors -> {layer path: LoraDelta(down, up, alpha)}, every key and shape checked
stack      LoraStack: forward hooks adding the scaled updates; weights change, LoRAs leave, base never touched
active     ActiveLoras: one model's stack kept in step with each run's settings (files read once)
files      our writer (diffusers/ComfyUI keys, metadata), header-only summaries, reading a file's tensors
"""
