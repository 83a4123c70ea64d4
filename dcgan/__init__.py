"""GAN training on your own images, as a DVC pipeline: data preparation, networks, training, generation,
metrics and serving.

The stage scripts in stages/ are thin command lines over these modules. Every param is declared once in
params.py; losses/, augment/, metrics/ and archs/ hold parts registered by name (registry.py), one module each.
"""
