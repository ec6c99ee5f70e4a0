"""quickstart-compressed: a plain Flower app using bouquet's compression, guard and KL
weighting."""
