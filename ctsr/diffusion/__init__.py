"""The diffusion maths in one place (``schedule``: ᾱ, add_noise, x0 ↔ ε, τ(t)); every other module calls it."""
