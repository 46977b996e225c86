"""The labels every delivered image carries, and reading them back.

China's GB 45438-2025 asks a generation service for an implicit label in each file's metadata
(aigc.py, xmp.py, containers.py) and, where content is published, a visible one; C2PA content
credentials serve the same purpose elsewhere. Labels are inserted into the encoded file, never by
re-encoding its pixels, and a label an upstream put in a file is kept. inspect.py reads them all
back for `imagegate verify`.

A low layer: the standard library, Pillow, `imagegate.errors` and optional third-party libraries
only, so any layer above may use it.
"""
