"""SMM entry and exit: the save-state maps, SMI entry, RSM and exception delivery."""
