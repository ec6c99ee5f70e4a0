"""bouquet.simulations."""
