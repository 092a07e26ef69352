"""Training recipes (JSON), installed as ``proxyembed.recipes`` so a wheel carries them.

Not code: this file only makes the folder a regular package, which ``importlib.resources`` reads the
same way in an editable checkout and in an installed wheel (see proxyembed/training/recipes.py).
"""
