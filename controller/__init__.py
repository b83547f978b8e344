"""parcel-sorter controller: the async decision pipeline of a parcel sorting line."""

__version__ = "0.1.0"
