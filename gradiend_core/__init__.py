"""GRADIEND: learn a feature from a language model's weight gradients and rewrite the model.

The package is the method; ``stages/`` only wires it into the DVC pipeline. Each concept lives in one
module: ``params`` (typed params.yaml), ``modeling`` (base model + parameter space), ``data``,
``gradients`` (objectives), ``mlm_head``, ``model`` (the GRADIEND), ``pruning``, ``train``,
``evaluate``, ``rewrite``, ``plots``.
"""
