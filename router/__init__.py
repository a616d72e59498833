"""Deciding where a request runs, and running it there. Today: the local Wasm tier."""
