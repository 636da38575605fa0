"""fidelity_lib: Attend-and-Excite and spatial-temporal attention control on Stable Diffusion, with their evaluation."""

__version__ = "0.1.0"
