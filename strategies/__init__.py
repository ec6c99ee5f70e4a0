"""bouquet.strategies."""
