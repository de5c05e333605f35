"""ditworld: a tiny FLUX.1-shaped model of the sdworld world, for the flow-matching learning test."""
