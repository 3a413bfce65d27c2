"""GRADIEND: learn a feature from a language model's weight gradients and rewrite the model.

The package is the method (docs/method.md); ``stages/`` only wires it into the DVC pipeline. Each
concept lives in one module; the README's "Layout" section lists them, one line each.
"""
