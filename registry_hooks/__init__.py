"""Glue between HyReSR and the training hosts, one small module per host.

- ``registry_hooks.basicsr``: ``python -m registry_hooks.basicsr -opt options/basicsr/X.yml``
  trains (or, with ``--test``, tests) through BasicSR's own pipeline with HyReSR registered.
- ``registry_hooks.neosr`` / ``registry_hooks.traiNNer``: what ``hyresr install --host ...`` copies
  into a neosr / traiNNer-redux checkout and how it recognises one.

neosr and traiNNer-redux need no runtime hook: ``hyresr_arch.py`` dropped into their ``archs/``
folder registers itself when the host imports it.
"""
