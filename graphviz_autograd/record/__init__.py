"""Recording training: the :class:`Recorder` (owner of every hook it installs) and the
statistics it computes (``stats``, with the optional C extension ``_reduce``)."""
