"""The other side of the wire: a physical model of a sorting line and its devices."""
