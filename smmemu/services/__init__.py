"""MM services for loaded drivers: the MM system table, the protocol database, SMRAM allocation.

Services are host-implemented behind small thunks in SMRAM (see
:mod:`smmemu.services.thunks`), except MmiManage and MmiHandlerRegister, which
point at the MM core's own functions so that loaded and built-in handlers share
one table and one dispatch path.
"""
