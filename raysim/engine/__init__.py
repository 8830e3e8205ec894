"""The round loop and what it passes around. Imports only torch and numpy."""
