"""The training recipe (`recipe.train`) and the pure components it is built from."""
