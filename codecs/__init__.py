"""bouquet.codecs."""
