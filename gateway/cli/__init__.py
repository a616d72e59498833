"""The ``wasm`` command: its commands (:mod:`.main`), the registry commands, the admin client and the demo."""
