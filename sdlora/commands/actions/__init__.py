"""What each command does once its options are parsed: `run(args) -> exit code`, one module per command.

These modules import the library (torch, diffusers); sdlora.cli imports one only after parsing."""
