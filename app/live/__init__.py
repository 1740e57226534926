"""The live path in a Panel process: subscriber, window, fan-out, wire."""
