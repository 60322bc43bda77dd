"""The Q35/ICH9 chipset devices that SMM code talks to through I/O ports."""
