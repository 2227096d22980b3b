"""promptwire decoders: the decode engine (``decoders.engine``), the processor API (``decoders.processor``)
and one sub-package per decoder (``trie``, ``uscd``, ``decog``). Importing a package here never imports torch;
the modules that need it do."""
