"""The only code that touches live autograd and torch internals.

``walk`` (the graph behind a tensor), ``nodes`` (op names, output metadata, saved
tensors), ``tags`` (what we write into ``node.metadata``), ``modules`` (the owner
of module forward hooks), ``instrument`` (node-creation hooks), ``frames`` (the
user's source line), ``models`` (wrappers, parameter names, ranks) and ``stack``
(releasing very deep graphs safely). A torch upgrade that breaks the library
breaks here first.
"""
