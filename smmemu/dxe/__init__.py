"""The DXE side: the non-SMM world that talks to MM through comm buffers and SW SMIs."""
