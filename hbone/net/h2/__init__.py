"""The sans-IO HTTP/2 engines: the only code in hbone that imports h2, hyperframe or hpack (see `api`)."""
