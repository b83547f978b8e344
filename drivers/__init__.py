"""Edges to real things: cameras, barcode decoders, line I/O, order stores."""
