"""OCI registries: references (:mod:`.reference`), credentials (:mod:`.auth`), the HTTP client (:mod:`.client`).

Nothing is imported here, so ``yurt exec`` on a local image never loads the
HTTP stack; :mod:`.client` is the only module that imports ``httpx``.
"""
