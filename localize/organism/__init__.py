"""The model organism: a small text-to-image model of a procedural world with planted knowledge.

`world` defines the world and draws it, `pipeline` is the diffusers pipeline that runs the model, `oracle`
reads attributes off images, and `weights` loads the shipped model and its CLIP scorer
(`localize.load_model("organism")`). `scripts/train_organism.py` trains all of it.
"""
