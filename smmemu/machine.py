"""The composition root: a Q35/ICH9-like machine with an MM core in TSEG.

``Machine`` builds and wires the narrow components (physical memory, the port
bus and ICH9 devices, the CPU with its SMRAM view, the non-SMM platform and
the DXE-side communicator) and offers the public API. Nothing here is global:
two Machines in one process share no state.

Start-up mirrors a platform boot: the MM core image is copied into TSEG and
the boot information (what an IPL passes in HOBs) is written next to it; the
DXE-side platform code enables APMC SMIs in SMI_EN (patina's
``PlatformMmControl::init``); then a first SMI lets the core initialise
itself, as edk2's first SMI runs ``InitializeSmm``.
"""

from __future__ import annotations

import logging
import struct
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType

from smmemu.boot import (
    RESET_SMBASE,
    install_core,
    install_entry_stubs,
    relocate_smbases,
    smbase_of,
)
from smmemu.chipset.bus import PortBus
from smmemu.chipset.cpuhp import CPU_HOTPLUG_BASE, LEGACY_BITMAP_SIZE, CpuHotplugBlock
from smmemu.chipset.debugport import DEBUG_PORT, DebugPort
from smmemu.chipset.flash import FlashWindow, build_flash
from smmemu.chipset.ich9 import PM_BLOCK_SIZE, ApmPorts, Ich9PmBlock, SmiTimers
from smmemu.chipset.pci import (
    ECAM_BASE,
    ECAM_SIZE,
    ConfigAddressPorts,
    Ich9Lpc,
    PciBus,
    Q35Mch,
    RefusedWrite,
)
from smmemu.cpu import Cpu
from smmemu.disasm import Mode, disassemble, find_mnemonics
from smmemu.dxe.communicator import CommunicateBuffer, MmCommunicator, TriggerOrder
from smmemu.dxe.platform import NMI_COUNTER, DxePlatform, Trampoline
from smmemu.errors import ConfigError, EngineError, ImageError, MachineClosedError
from smmemu.firmware.image import MmCoreImage
from smmemu.memory import PhysicalMemory, SmramAccess
from smmemu.profiles import Profile, get_profile
from smmemu.results import CommResult, FaultRecord, SmiResult, StopReason
from smmemu.scheduler import Scheduler
from smmemu.services.callsite import KnownTable, describe_bad_call, tables_from_protocols
from smmemu.services.cpu_service import (
    CPU_SERVICE_GUID,
    CpuServiceProtocol,
    build_hot_eject_data,
    build_hot_plug_data,
)
from smmemu.services.dispatcher import FirmwareReport, dispatch_firmware
from smmemu.services.dxe import DxeServices
from smmemu.services.dxe_memory import build_memory_map
from smmemu.services.guestmem import GuestMemory
from smmemu.services.heap import SmramHeap
from smmemu.services.images import MM_DISPATCH_GUID, DriverManager, LoadedImage
from smmemu.services.platform_protocols import install_platform_protocols
from smmemu.services.runtime import MmRuntime
from smmemu.services.smm_protocols import MM_CPU_GUID, SW_DISPATCH2_GUID, MmCpuProtocol, SwDispatch2
from smmemu.services.stubs import StubProtocol, install_stub
from smmemu.services.thunks import ThunkTable
from smmemu.smm.pagetables import set_page_permissions
from smmemu.smm.savestate import map_size
from smmemu.snapshot import Snapshot
from smmemu.snapshot import restore as restore_snapshot
from smmemu.snapshot import take as take_snapshot
from smmemu.uefi.guids import END_OF_DXE_GUID, MM_READY_TO_LOCK_GUID, parse_guid
from smmemu.uefi.status import EfiStatus

__all__ = ["SETTABLE_REGISTERS", "Machine"]

log = logging.getLogger(__name__)

_PM_NAME = "ICH9 ACPI/PM (PMBASE)"
_EVENT_PROTOCOLS = {
    MM_READY_TO_LOCK_GUID: uuid.UUID("47b7fa8c-f4bd-4af6-8200-333086f0d2c8"),
    END_OF_DXE_GUID: uuid.UUID("24e70042-d5c5-4260-8c39-0ad3aa32e93d"),
}
_THUNK_AREA = 0x1_0000
_FLASH_WINDOW = 0xFF00_0000  # the top 16 MiB below 4 GiB: the platform flash on q35 and ICH9
_COMM_BUFFERS = (  # (id, address, pages, status address): 0 = supervisor, 1 = user
    (0, 0x0010_0000, 4, 0x0011_0000),
    (1, 0x0012_0000, 4, 0x0013_0000),
)
_MSR_MNEMONICS = frozenset({"rdmsr", "wrmsr"})
_FAULT_REGS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp",
               "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
SETTABLE_REGISTERS = frozenset({
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
})


def _read_source(source: str | Path | bytes, what: str) -> bytes:
    """Bytes given directly, or read from a path.

    Raises:
        ImageError: the file cannot be read.
    """
    if isinstance(source, bytes):
        return source
    path = Path(source)
    try:
        return path.read_bytes()
    except OSError as err:
        raise ImageError(f"cannot read {what} {path}: {err.strerror}", path=str(path)) from err


def _why_no_return(result: CommResult) -> str:
    """Why a driver's entry point did not return, from the dispatch MMI's outcome."""
    fault = result.fault
    if fault is not None:
        where = fault.symbol or f"{fault.rip:#x}"
        extra = f" accessing {fault.cr2:#x}" if fault.vector == 14 else ""
        if fault.vector == 14 and fault.cr2 >= _FLASH_WINDOW:
            extra += " (the flash device, which smmemu does not emulate)"
        via = f", reached by {fault.call_site}" if fault.call_site else ""
        return f"{fault.name} at {where}{extra}{via} during the entry point"
    detail = f": {result.smi.detail}" if result.smi.detail else ""
    return f"the entry point did not return ({result.smi.stop.value}{detail})"


class Machine:
    """An emulated machine whose SMIs run a real MM core image in isolated SMRAM.

    ``Machine.SETTABLE_REGISTERS`` names the registers ``software_smi`` accepts.

    Args:
        profile: platform profile name (``"q35"`` or ``"intel"``).
        image: path of an MM core image (its ``.manifest.json`` beside it);
            the bundled image when None.
        cpus: number of CPUs (each its own Unicorn instance; SMIs are broadcast).
        budget: wall-clock seconds one guest run (a request and its SMIs) may take.
        trigger_order: port order of the software SMI (patina or OVMF).
        virtual_clock: run CPUs preemptively even with one CPU, so the virtual
            clock (and the SMI timers) advance with executed code.
        virtual_budget: virtual seconds one run may take (implies ``virtual_clock``);
            deterministic, unlike ``budget``.
        pcd: values of dynamic PCD tokens for loaded drivers (token number -> value;
            unlisted tokens read as 0, and every read is reported). A value may name a
            platform object whose SMRAM address the token holds: ``"CpuHotPlugData"`` or
            ``"CpuHotEjectData"`` (what PiSmmCpuDxeSmm publishes; see ``platform_data``).
        firmware: a firmware volume or flash image (``.fd``) whose MM drivers are loaded
            and dispatched in dependency order at start-up (see ``firmware_report``).
        mode: ``"standalone"`` (default: requests on a copy in SMRAM, only the comm
            buffers mapped in SMM, as edk2's Standalone MM core and the MM Supervisor)
            or ``"traditional"`` (edk2's PiSmmCore: requests handled in the comm buffer
            itself and all DRAM mapped NX, as traditional SMM drivers expect; the
            default when ``firmware`` is given).
        varstore: the variable store flash image (OVMF_VARS) mapped as QEMU's pflash1
            directly below ``firmware``, which becomes pflash0 ending at 4 GiB (q35).
            Without it only the code flash is mapped. Programs and erases change a
            copy: read it back with :attr:`varstore`.
        possible_cpus: CPU slots of the platform (default ``cpus``): the length of
            CPU_HOT_PLUG_DATA, for OVMF's CpuHotplugSmm.
        stubs: protocols to install before any driver loads, each a table of
            functions that return a declared status (:class:`StubProtocol`); for the
            protocols a driver needs that smmemu does not model.

    Raises:
        ProfileError: unknown profile.
        ImageError: unreadable or inconsistent image.
        ConfigError: an invalid option value.
    """

    SETTABLE_REGISTERS = SETTABLE_REGISTERS

    def __init__(self, profile: str = "q35", image: str | Path | None = None, *,
                 cpus: int = 1, budget: float = 2.0, trigger_order: str = "patina",
                 virtual_clock: bool = False, virtual_budget: float | None = None,
                 pcd: dict[int, int | str] | None = None,
                 firmware: str | Path | bytes | None = None, mode: str | None = None,
                 stubs: Iterable[StubProtocol] = (), possible_cpus: int | None = None,
                 varstore: str | Path | bytes | None = None) -> None:
        self.profile: Profile = get_profile(profile)
        if not budget > 0:
            raise ConfigError(f"budget must be positive, got {budget!r}", field="budget",
                              value=budget)
        try:
            order = TriggerOrder(trigger_order)
        except ValueError:
            raise ConfigError(f"unknown trigger order {trigger_order!r} (patina or ovmf)",
                              field="trigger_order", value=trigger_order) from None
        self.image = MmCoreImage.load(image)
        self._check_image_fits()
        max_cpus = self.image.constants["MAX_CPUS"]
        if not 1 <= cpus <= max_cpus:
            raise ConfigError(f"cpus must be between 1 and {max_cpus}, got {cpus}",
                              field="cpus", value=cpus)
        self.budget = budget
        self._pcd = dict(pcd or {})
        self._stubs = tuple(stubs)
        self.possible_cpus = cpus if possible_cpus is None else possible_cpus
        """CPUs the platform could have (hot-plug slots); ``cpus`` of them are present."""
        if not cpus <= self.possible_cpus <= max_cpus:
            raise ConfigError(f"possible_cpus must be between cpus ({cpus}) and {max_cpus}, "
                              f"got {possible_cpus}", field="possible_cpus", value=possible_cpus)
        if virtual_budget is not None and not virtual_budget > 0:
            raise ConfigError(f"virtual_budget must be positive, got {virtual_budget!r}",
                              field="virtual_budget", value=virtual_budget)
        self._preemptive = cpus > 1 or virtual_clock or virtual_budget is not None
        self.virtual_budget_ns = None if virtual_budget is None else round(virtual_budget * 1e9)
        self._closed = False
        p = self.profile
        self._memory = PhysicalMemory(p.dram_size, p.tseg_base, p.tseg_size)
        self.ports = PortBus()
        self.refused_writes: list[RefusedWrite] = []
        self.pci = PciBus()
        self.mch = Q35Mch(p.tseg_base, p.dram_size, self._on_tseg_change, self.refused_writes)
        self.lpc = Ich9Lpc(p.pmbase, self._on_pmbase_change, self.refused_writes)
        self.pci.functions[(0, 0, 0)] = self.mch
        self.pci.functions[(0, 31, 0)] = self.lpc
        self.pm = Ich9PmBlock(p, self._raise_smi, lambda: self.lpc.smi_lock,
                              lambda old, new: self.timers.on_smi_en(old, new))
        self.timers = SmiTimers(p, self.pm, lambda: (self.lpc.read(0xA0, 2),
                                                     self.lpc.read(0xA4, 1)))
        self._time_base = 0
        self.apm = ApmPorts(p, self.pm)
        self.ports.attach(0xB2, 2, self.apm, "ICH9 APM (APM_CNT, APM_STS)")
        self.ports.attach(p.pmbase, PM_BLOCK_SIZE, self.pm, _PM_NAME)
        self.ports.attach(0xCF8, 8, ConfigAddressPorts(self.pci), "PCI CONFIG_ADDRESS/DATA")
        self.cpu_hotplug: CpuHotplugBlock | None = None
        """QEMU's CPU hotplug register block at 0xCD8 (q35 only)."""
        if p.name == "q35":
            self.cpu_hotplug = CpuHotplugBlock(self.possible_cpus, cpus)
            self.ports.attach(CPU_HOTPLUG_BASE, LEGACY_BITMAP_SIZE, self.cpu_hotplug,
                              "QEMU CPU hotplug (ICH9)")
        self.debug_port = DebugPort()
        self.ports.attach(DEBUG_PORT, 1, self.debug_port, "QEMU debug console")
        self._cpus = [
            Cpu(index, p, self._memory, self.ports, self._fault_decoder(index),
                self.pm.recover_line, smbase=RESET_SMBASE, preemptive=self._preemptive)
            for index in range(cpus)
        ]
        self._scheduler = Scheduler(self._cpus, self._tick, lambda: self.clock_ns,
                                    self.virtual_budget_ns)
        firmware_data = None if firmware is None else _read_source(firmware, "firmware")
        self.flash = self._build_flash(firmware_data, varstore)
        for cpu in self._cpus:
            cpu.engine.map_mmio(ECAM_BASE, ECAM_SIZE, self.pci.ecam_read, self.pci.ecam_write)
            if self.flash is not None:
                cpu.engine.map_mmio(self.flash.base, self.flash.size, self.flash.read,
                                    self.flash.write)
            cpu.watch_msr_sites(self.image.msr_sites, fixed=self.image.msr_numbers)
        self.mode = mode if mode is not None else ("traditional" if firmware is not None
                                                   else "standalone")
        if self.mode not in ("standalone", "traditional"):
            raise ConfigError(f"unknown MM core mode {self.mode!r} (standalone or traditional)",
                              field="mode", value=self.mode)
        window = (0, 0) if self.flash is None else (self.flash.base, self.flash.base
                                                     + self.flash.size)
        install_core(self.image, self._memory, p, _COMM_BUFFERS, cpus,
                     traditional=self.mode == "traditional", mmio=window)
        self._invalidate(p.tseg_base, p.tseg_base + p.tseg_size)
        install_entry_stubs(self.image, self._memory, cpus)
        self._dxe = DxePlatform(self._memory, p.pmbase)
        for cpu in self._cpus:
            self._dxe.prepare(cpu)
            cpu.watch_iret_sites(self._dxe.iret_sites)
        buffers = [CommunicateBuffer(i, address, pages * 0x1000, status)
                   for i, address, pages, status in _COMM_BUFFERS]
        self._communicator = MmCommunicator(buffers, self, self, order=order)
        self.run_hook: Callable[[Cpu, int], SmiResult] | None = None
        """Runs guest code instead of ``Cpu.run`` when set (a debugger; one-CPU machines only).

        Called as ``run_hook(cpu, rip)`` for every request's guest run; it must start
        ``cpu`` at ``rip``, drive it to the end of the run and return ``cpu.result()``.
        """
        self._boot()
        self.firmware_report: FirmwareReport | None = None
        if firmware_data is not None:
            self.firmware_report = self.load_firmware(firmware_data)

    # -- construction -----------------------------------------------------------
    def _check_image_fits(self) -> None:
        p, image = self.profile, self.image
        if image.constants["TSEG_BASE"] != p.tseg_base:
            raise ImageError(
                f"{image.path} expects TSEG at {image.constants['TSEG_BASE']:#x}, "
                f"profile {p.name} has it at {p.tseg_base:#x}", path=str(image.path))
        last_tile = smbase_of(image, image.constants["MAX_CPUS"] - 1) + 0x10000
        if image.load_address < last_tile or image.end > p.tseg_base + p.tseg_size:
            raise ImageError(f"{image.path} at {image.load_address:#x} overlaps the SMBASE "
                             f"tiles or leaves TSEG", path=str(image.path))

    def _build_flash(self, firmware: bytes | None,
                     varstore: str | Path | bytes | None) -> FlashWindow | None:
        """pflash0/pflash1 below 4 GiB, as QEMU maps OVMF_CODE and OVMF_VARS (q35 only)."""
        if varstore is not None and firmware is None:
            raise ConfigError("a varstore needs firmware= (the code flash it sits below)",
                              field="varstore", value=str(varstore)[:64])
        if firmware is None:
            return None
        if self.profile.name != "q35":
            if varstore is not None:
                raise ConfigError(f"profile {self.profile.name} has no pflash model; the "
                                  "varstore needs q35", field="varstore", value=self.profile.name)
            return None
        vars_data = None if varstore is None else _read_source(varstore, "varstore")
        try:
            return build_flash(firmware, vars_data)
        except ConfigError:
            if vars_data is not None:
                raise
            log.info("firmware image of %#x bytes is not a flash image; no flash mapped",
                     len(firmware))
            return None

    @property
    def varstore(self) -> bytes | None:
        """The variable store flash (pflash1) as it is now, or None without one."""
        writable = [] if self.flash is None else [d for d in self.flash.devices
                                                  if not d.read_only]
        return writable[0].contents if writable else None

    def _boot(self) -> None:
        for cpu in self._cpus:
            parked = cpu.run(self._dxe.addresses["park"], budget=self.budget)
            if parked.stop is not StopReason.HALTED:
                raise EngineError(f"CPU {cpu.index} did not park: {parked.detail}")
        relocate_smbases(self.image, self._memory, self.profile, self._cpus, self.budget)
        result = self._run_trampoline("enable_smi", {})
        if result.stop is not StopReason.HALTED:
            raise EngineError(f"platform SMI enable failed: {result.detail}")
        result = self.software_smi(0x00)
        if not result.ok:
            raise ImageError(f"the MM core did not initialise: {result.stop.value} "
                             f"{result.detail}", path=str(self.image.path))
        log.debug("MM core initialised in %.1f ms", result.elapsed * 1e3)
        self._setup_services()

    def _setup_services(self) -> None:
        """The MM services for loaded drivers (host thunks in the first 64 KiB of the heap)."""
        constants = self.image.constants
        memory = GuestMemory(self._memory)
        thunks = ThunkTable(self._memory, constants["MM_HEAP"], _THUNK_AREA)
        self.heap = SmramHeap(constants["MM_HEAP"] + _THUNK_AREA, constants["MM_HEAP_END"])
        kind = self.profile.save_state
        save_states = [(cpu.smbase + self.profile.save_state_offset, map_size(kind))
                       for cpu in self._cpus]
        self.services = MmRuntime(
            memory, self.heap, thunks, mmi_manage=self.image.symbols["mmi_manage"],
            mmi_handler_register=self.image.symbols["mmi_handler_register"],
            handler_table=constants["HANDLER_TABLE"], save_states=save_states,
            io_read=self.ports.read, io_write=self.ports.write)
        runtime = [(address, address + pages * 0x1000) for _, address, pages, _ in _COMM_BUFFERS]
        runtime += [(status, status + 0x1000) for _, _, _, status in _COMM_BUFFERS]
        self.dxe_services = DxeServices(self.services, build_memory_map(
            self.profile.dram_size, (self.profile.tseg_base, self.profile.tseg_size), runtime))
        smbases = [cpu.smbase for cpu in self._cpus]
        self.platform_data = {
            "CpuHotPlugData": build_hot_plug_data(self.services, smbases, self.possible_cpus),
            "CpuHotEjectData": build_hot_eject_data(self.services, self.possible_cpus),
        }
        self.pcd = install_platform_protocols(
            self.dxe_services, (self.profile.tseg_base, self.profile.tseg_size),
            self._resolve_pcd())
        self.sw_dispatch = SwDispatch2(self.services,
                                       lambda: (self.apm.apm_cnt, self.apm.apm_sts))
        mm_cpu = MmCpuProtocol(self.services, self.profile,
                               lambda: [cpu.smbase for cpu in self._cpus])
        cpu_service = CpuServiceProtocol(self.services, len(self._cpus))
        for guid, interface in ((SW_DISPATCH2_GUID, self.sw_dispatch.interface),
                                (MM_CPU_GUID, mm_cpu.interface),
                                (CPU_SERVICE_GUID, cpu_service.interface)):
            self.services.db.install(self.services.pool(16), guid, interface)
        self.drivers = DriverManager(self.services, self.dxe_services)
        self.stubs: list[StubProtocol] = []
        """The stub protocols installed, in order."""
        for stub in self._stubs:
            self.add_stub(stub)
        self.services.symbolize = self.symbolize
        guest_return = thunks.add("return to the host", lambda _cpu: 0)
        for cpu in self._cpus:
            cpu.host_calls = self.services.host_call
            cpu.host_call_range = (thunks.base, thunks.end)
            cpu.guest_return_thunk = guest_return
        self.sw_dispatch.attach_root(self._append_handler(self.sw_dispatch.root_handler, None))
        self._append_handler(self.drivers.dispatch_handler, MM_DISPATCH_GUID)
        for event, protocol in _EVENT_PROTOCOLS.items():
            self._wrap_event_handler(event, protocol)

    def _resolve_pcd(self) -> dict[int, int]:
        """PCD overrides with named platform objects replaced by their SMRAM addresses."""
        out: dict[int, int] = {}
        for token, value in self._pcd.items():
            if isinstance(value, str):
                if value not in self.platform_data:
                    raise ConfigError(f"PCD token {token}: unknown platform object {value!r} "
                                      f"(one of {', '.join(sorted(self.platform_data))})",
                                      field="pcd", value=value)
                out[token] = self.platform_data[value]
            else:
                out[token] = value
        return out

    def _wrap_event_handler(self, event: uuid.UUID, protocol: uuid.UUID) -> None:
        """After the MM core's own handler for ``event``, install the SMM ``protocol``.

        PiSmmCore installs gEfiSmmReadyToLockProtocolGuid / gEfiSmmEndOfDxeProtocolGuid in
        its handlers for the DXE events; drivers wait for them with RegisterProtocolNotify.
        """
        table = self.image.constants["HANDLER_TABLE"]
        count = int(struct.unpack("<Q", self._memory.read(table, 8, smm=True))[0])
        for index in range(count):
            record = table + 0x10 + index * 0x20
            flags, handler, guid = struct.unpack("<QQ16s", self._memory.read(record, 0x20,
                                                                               smm=True))
            if flags & 1 and not flags & 2 and uuid.UUID(bytes_le=guid) == event:
                services = self.services

                def wrapped(cpu: Cpu, original: int = handler,
                            protocol: uuid.UUID = protocol,
                            services: MmRuntime = services) -> int:
                    status = cpu.call_guest(original, [cpu.argument(i) for i in range(4)])
                    services.install_event_protocol(cpu, protocol)
                    return EfiStatus.DEVICE_ERROR if status is None else status

                thunk = services.thunks.add(f"{event} handler + SMM protocol", wrapped)
                self._memory.write(record + 8, struct.pack("<Q", thunk), smm=True)
                return

    def _tick(self) -> None:
        """Between scheduler rounds: move the virtual clock with the code executed."""
        self.timers.advance(self.clock_ns)

    @property
    def clock_ns(self) -> int:
        """The virtual clock in ns.

        Time advanced by :meth:`advance_time`, plus, when CPUs run preemptively
        (several CPUs, or ``virtual_clock``), 1 ns per byte of code the busiest
        CPU executed.
        """
        executed = max(cpu.executed for cpu in self._cpus)
        return self._time_base + executed

    def advance_time(self, seconds: float) -> SmiResult | None:
        """Let ``seconds`` of virtual time pass with the CPUs halted; timers may raise SMIs.

        Returns the outcome of the SMIs that timers raised, or None if none fired.
        """
        self._alive()
        self._time_base += round(seconds * 1e9)
        self.timers.advance(self.clock_ns)
        pending = [cpu for cpu in self._cpus if cpu.smi_pending and cpu.halted]
        if not pending:
            return None
        if not self._preemptive:
            return pending[0].service_pending_smi(budget=self.budget)
        pending[0].wake()
        return self._scheduler.run(pending[0], self.budget)

    def _invalidate(self, begin: int, end: int) -> None:
        for cpu in self._cpus:
            cpu.engine.invalidate_code(begin, end)

    def _run_on(self, cpu: Cpu, rip: int, regs: dict[str, int]) -> SmiResult:
        """Run non-SMM code on ``cpu`` (with every CPU the SMIs it raises reach)."""
        for name, value in regs.items():
            cpu.engine.set_reg(name, value)
        before = len(self._memory.findings)
        if self.run_hook is not None and not self._preemptive:
            result = self.run_hook(cpu, rip)
        elif not self._preemptive:
            result = cpu.run(rip, budget=self.budget)
        else:
            cpu.start(rip)
            result = self._scheduler.run(cpu, self.budget)
        result.smram_accesses.extend(self._memory.findings[before:])
        return result

    def _run_trampoline(self, name: str, regs: dict[str, int]) -> SmiResult:
        regs = {**regs, "rsp": 0x8_0000}
        return self._run_on(self._cpus[0], self._dxe.addresses[name], regs)

    # -- chipset -> CPU ----------------------------------------------------------
    def _raise_smi(self) -> None:
        # QEMU broadcasts APM SMIs to every CPU (smm_semantics.md 5.5).
        for cpu in self._cpus:
            cpu.raise_smi()

    def _on_tseg_change(self) -> None:
        self._memory.smram_closed = self.mch.tseg_closed
        for cpu in self._cpus:
            if not cpu.in_smm:
                cpu.smram.close()

    def _on_pmbase_change(self, pmbase: int) -> None:
        self.ports.detach(_PM_NAME)
        self.ports.attach(pmbase, PM_BLOCK_SIZE, self.pm, _PM_NAME)

    def _fault_decoder(self, cpu: int) -> Callable[[], FaultRecord | None]:
        base = self.image.constants["FAULT_RECORD"] + cpu * self.image.constants[
            "FAULT_RECORD_SIZE"]
        return lambda: self._decode_fault(base)

    def _decode_fault(self, base: int) -> FaultRecord | None:
        raw = self._memory.read(base, 0xC8, smm=True)
        values = struct.unpack("<25Q", raw)
        if values[0] != 1:
            return None
        self._memory.write(base, bytes(8), smm=True)
        vector, error, rip, cs, rflags, rsp, ss, cr2, cr3 = values[1:10]
        registers = dict(zip(_FAULT_REGS, values[10:], strict=True))
        registers["rsp"] = rsp
        symbol = self.symbolize(rip)
        call_site = None if symbol is not None else self._call_site(rip, rsp, registers)
        return FaultRecord(vector, error, rip, cs, rflags, rsp, ss, cr2, cr3, registers,
                           self._disassemble(rip), symbol, call_site)

    def _call_site(self, rip: int, rsp: int, registers: dict[str, int]) -> str | None:
        """Who called the bad address ``rip``, through which table (see services.callsite)."""
        if not hasattr(self, "services"):
            return None

        def read(address: int, size: int) -> bytes | None:
            try:
                return self._memory.read(address, size, smm=True)
            except Exception:  # noqa: BLE001 - any address may come from a broken stack
                return None

        dxe = self.dxe_services
        tables = tables_from_protocols(
            [(r.guid, r.interface) for r in (*self.services.db.records, *dxe.db.records)])
        tables += [KnownTable(self.services.tables.mmst, "EFI_MM_SYSTEM_TABLE"),
                   KnownTable(dxe.system_table, "EFI_SYSTEM_TABLE"),
                   KnownTable(dxe.boot_services, "EFI_BOOT_SERVICES"),
                   KnownTable(dxe.runtime_services, "EFI_RUNTIME_SERVICES"),
                   KnownTable(dxe.memory_map.table, "EFI_DXE_SERVICES")]
        return describe_bad_call(rip, rsp, registers, read, self.symbolize, tables)

    def _disassemble(self, rip: int, count: int = 4) -> tuple[str, ...]:
        try:
            code = self._memory.read(rip, 16 * count, smm=True)
        except Exception:  # noqa: BLE001 - a fault RIP may point anywhere
            return ()
        return tuple(f"{i.address:#x}: {i.mnemonic} {i.op_str}".rstrip()
                     for i in disassemble(code, rip, Mode.BITS64, count=count))

    # -- public API ---------------------------------------------------------------
    def _alive(self) -> None:
        if self._closed:
            raise MachineClosedError("this Machine has been closed")

    @property
    def memory(self) -> PhysicalMemory:
        """The machine's RAM (host buffers; prefer read_physical / write_physical)."""
        return self._memory

    @property
    def smram(self) -> list[tuple[int, int]]:
        """SMRAM ranges as (base, size)."""
        return [(self.profile.tseg_base, self.profile.tseg_size)]

    def comm_buffer(self, buffer_id: int = 0) -> tuple[int, int]:
        """Physical address and size of comm buffer ``buffer_id`` (0 supervisor, 1 user)."""
        buffer = self._communicator.buffer(buffer_id)
        return buffer.address, buffer.size

    def comm_status(self, buffer_id: int = 0) -> int:
        """Physical address of the MM_COMM_BUFFER_STATUS mailbox of ``buffer_id``."""
        return self._communicator.buffer(buffer_id).status_address

    def read_physical(self, address: int, size: int, *, smm: bool = False) -> bytes:
        """Read physical memory; outside SMM, SMRAM reads as all-ones and is recorded."""
        self._alive()
        return self._memory.read(address, size, smm=smm)

    def write_physical(self, address: int, data: bytes, *, smm: bool = False) -> None:
        """Write physical memory; outside SMM, SMRAM writes are dropped and recorded."""
        self._alive()
        self._memory.write(address, bytes(data), smm=smm)
        self._invalidate(address, address + len(data))

    def _watch_code(self, address: int, code: bytes) -> None:
        """Find ``rdmsr``/``wrmsr`` in 64-bit code the host placed, so they are emulated."""
        sites = find_mnemonics(code, address, Mode.BITS64, _MSR_MNEMONICS)
        is_write = {site: self._memory.read(site, 2, smm=True) == b"\x0f\x30" for site in sites}
        irets = find_mnemonics(code, address, Mode.BITS64, frozenset({"iretq"}))
        for cpu in self._cpus:
            cpu.watch_msr_sites(is_write)
            cpu.watch_iret_sites(irets)

    @property
    def smram_accesses(self) -> list[SmramAccess]:
        """Every non-SMM access to SMRAM refused so far (guest and host)."""
        return list(self._memory.findings)

    def communicate(self, recipient: uuid.UUID | str, data: bytes, *,
                    buffer_id: int = 0) -> CommResult:
        """Send an MM communicate request through comm buffer ``buffer_id``.

        Raises:
            GuidError: malformed ``recipient``.
            CommBufferError: unknown buffer, empty payload or payload too large.
        """
        self._alive()
        guid = parse_guid(recipient)
        before = len(self._memory.findings)
        result = self._communicator.communicate(buffer_id, bytes(data), guid)
        result.smi.smram_accesses.extend(self._memory.findings[before:])
        if not result.smi.ok:
            # The SMI was abandoned (fault, budget, shutdown): the request is dead. Withdraw
            # it, or the next SMI would take this mailbox again instead of the next request.
            self._memory.write(self.comm_status(buffer_id), b"\x00", smm=False)
        return result

    def software_smi(self, command: int, data: int = 0, *,
                     regs: dict[str, int] | None = None) -> SmiResult:
        """Raise a software SMI the way CHIPSEC does: ``out 0xB2, ax`` with chosen GPRs.

        Raises:
            ConfigError: a command or data byte out of range, or an unknown register.
        """
        self._alive()
        for name, value in (("command", command), ("data", data)):
            if not 0 <= value <= 0xFF:
                raise ConfigError(f"{name} must be a byte, got {value:#x}", field=name,
                                  value=value)
        values = dict(regs or {})
        unknown = sorted(set(values) - SETTABLE_REGISTERS)
        if unknown:
            raise ConfigError(f"cannot set register(s) {', '.join(unknown)} "
                              f"(allowed: {', '.join(sorted(SETTABLE_REGISTERS))})",
                              field="regs", value=unknown)
        for name, value in values.items():
            if not 0 <= value < 1 << 64:
                raise ConfigError(f"{name}={value:#x} does not fit 64 bits", field=name,
                                  value=value)
        rax = values.get("rax", 0)
        values["rax"] = (rax & ~0xFFFF) | (data << 8) | command
        return self._run_trampoline("raw_smi", values)

    def send_smi_ipi(self, cpu: int = 0) -> SmiResult:
        """An SMI IPI to one CPU (local APIC ICR delivery mode SMI): taken where it waits.

        CPUs are halted between requests, so the SMI wakes the CPU from HLT
        (auto-HALT restart in the ``intel`` profile).

        Raises:
            ConfigError: no such CPU.
        """
        target = self._cpu_at(cpu)
        target.raise_smi()
        before = len(self._memory.findings)
        if not self._preemptive:
            result = target.service_pending_smi(budget=self.budget)
        else:
            target.wake()
            result = self._scheduler.run(target, self.budget)
        result.smram_accesses.extend(self._memory.findings[before:])
        return result

    def inject_nmi(self, cpu: int = 0) -> SmiResult | None:
        """An NMI to ``cpu``: delivered through its IDT now, or held while NMIs are blocked.

        Returns the run of the NMI handler, or None when the NMI is held.

        Raises:
            ConfigError: no such CPU.
        """
        target = self._cpu_at(cpu)
        if not target.inject_nmi():
            return None
        return self._run_on(target, target.engine.reg("rip"), {})

    def _cpu_at(self, cpu: int) -> Cpu:
        """CPU number ``cpu`` of a live Machine.

        Raises:
            ConfigError: no such CPU.
        """
        self._alive()
        if not 0 <= cpu < len(self._cpus):
            raise ConfigError(f"no CPU {cpu} (this machine has {len(self._cpus)})",
                              field="cpu", value=cpu)
        return self._cpus[cpu]

    @property
    def nmi_count(self) -> int:
        """NMIs the non-SMM NMI handler has counted."""
        return int.from_bytes(self._memory.read(NMI_COUNTER, 8, smm=False), "little")

    def trigger_sw_mmi(self, command: int, data: int, order: TriggerOrder) -> SmiResult:
        """The DXE shim's SMI trigger (:class:`smmemu.dxe.communicator.SwSmiTrigger`)."""
        name = "trigger_patina" if order is TriggerOrder.PATINA else "trigger_ovmf"
        return self._run_trampoline(name, {"rcx": command, "rdx": data})

    def run_guest(self, code: bytes, *, address: int = 0x0002_0000,
                  regs: dict[str, int] | None = None) -> SmiResult:
        """Run ``code`` as non-SMM guest code at ``address`` until it executes ``hlt``.

        For tests and experiments: the code runs in the non-SMM 64-bit context
        and may raise SMIs, touch SMRAM, and so on. An idle loop (``hlt; jmp``)
        follows the code.
        """
        self._alive()
        # An idle loop after the code: a CPU woken from its final hlt waits again.
        code = bytes(code) + b"\xf4\xeb\xfd"
        self.write_physical(address, code)
        self._watch_code(address, code)
        return self._run_on(self._cpus[0], address, dict(regs or {}))

    def dxe_trampoline_address(self, name: str) -> int:
        """Where the non-SMM trampoline ``name`` lives."""
        return self._dxe.addresses[name]

    def dxe_trampolines(self) -> tuple[Trampoline, ...]:
        """The non-SMM guest code the shim runs (bytes and their assembly)."""
        return self._dxe.trampolines

    @property
    def smi_count(self) -> int:
        """SMIs taken by CPU 0 since the Machine was built (relocation and boot SMIs included)."""
        return self._cpus[0].smi_count

    @property
    def cpu(self) -> Cpu:
        """CPU 0, the BSP (for the debugger and tests)."""
        return self._cpus[0]

    @property
    def cpus(self) -> tuple[Cpu, ...]:
        """Every CPU, in index order."""
        return tuple(self._cpus)

    def handler_table(self) -> list[tuple[uuid.UUID | None, int]]:
        """The MM core's MMI handler table: (HandlerType GUID or None for root, handler)."""
        table = self.image.constants["HANDLER_TABLE"]
        count = int(struct.unpack("<Q", self._memory.read(table, 8, smm=True))[0])
        out: list[tuple[uuid.UUID | None, int]] = []
        for index in range(min(count, 64)):
            flags, handler, guid = struct.unpack(
                "<QQ16s", self._memory.read(table + 0x10 + index * 0x20, 0x20, smm=True))
            if flags & 1:
                out.append((None if flags & 2 else uuid.UUID(bytes_le=guid), handler))
        return out

    def install_handler(self, code: bytes, guid: uuid.UUID | str | None = None) -> int:
        """Copy ``code`` into the SMRAM heap and register it as an MMI handler.

        The record is appended to the core's own table, so it is dispatched by
        the same MmiManage as the built-in handlers. ``guid`` None registers a
        root handler. Returns the handler's address.

        Raises:
            ConfigError: the handler table or the SMRAM heap is full.
        """
        self._alive()
        parsed = None if guid is None else parse_guid(guid)
        address = self.heap.allocate_pages(max(1, (len(code) + 0xFFF) // 0x1000))
        if address is None:
            raise ConfigError("the SMRAM heap is full", field="code", value=len(code))
        self._memory.write(address, code, smm=True)
        self._invalidate(address, address + len(code))
        self._watch_code(address, code)
        self._append_handler(address, parsed)
        return address

    def _append_handler(self, handler: int, guid: uuid.UUID | None) -> int:
        """Append a record to the MM core's MMI handler table (as MmiHandlerRegister does).

        Returns the record's address (the DispatchHandle MmiHandlerRegister would give).
        """
        table = self.image.constants["HANDLER_TABLE"]
        count, capacity = (int(v) for v in
                           struct.unpack("<QQ", self._memory.read(table, 16, smm=True)))
        if count >= capacity:
            raise ConfigError("the MMI handler table is full", field="handlers", value=count)
        flags = 3 if guid is None else 1
        guid_bytes = bytes(16) if guid is None else guid.bytes_le
        self._memory.write(table + 0x10 + count * 0x20,
                           struct.pack("<QQ16s", flags, handler, guid_bytes), smm=True)
        self._memory.write(table, struct.pack("<Q", count + 1), smm=True)
        return int(table + 0x10 + count * 0x20)

    def load_image(self, source: str | Path | bytes, *, standalone: bool = False,
                   name: str | None = None, dispatch: bool = True) -> LoadedImage:
        """Load an MM driver (PE32+) into SMRAM and, by default, run its entry point in SMM.

        ``standalone`` selects the MM_STANDALONE entry convention
        ``(ImageHandle, MmSystemTable)``; otherwise the traditional DXE_SMM_DRIVER one
        ``(ImageHandle, SystemTable)``. The entry point runs through an MMI on
        gEventMmDispatchGuid, as edk2 dispatches SMM drivers.

        Raises:
            ImageError: unreadable, malformed or unrelocatable image.
            ConfigError: the SMRAM heap is full.
        """
        self._alive()
        data = _read_source(source, "image")
        label = name or ("image" if isinstance(source, bytes) else Path(source).stem)
        try:
            image = self.drivers.load(data, label, standalone=standalone)
        except MemoryError as err:
            raise ConfigError(str(err), field="image", value=label) from err
        self._invalidate(image.base, image.base + image.size)
        self._protect(image)
        for address, code in self.drivers.code_ranges(image):
            self._watch_code(address, code)
        if dispatch:
            result = self.dispatch_drivers()
            if image.status is None and image.error is not None:
                image.error = _why_no_return(result)
        return image

    def add_stub(self, stub: StubProtocol) -> int:
        """Install a stub protocol for drivers loaded from now on; returns its interface.

        Raises:
            ConfigError: the SMRAM heap or the host-call thunk area is full.
        """
        self._alive()
        try:
            interface = install_stub(self.services, self.dxe_services.db, stub)
        except MemoryError as err:
            raise ConfigError(f"cannot install stub {stub.label}: {err}", field="stub",
                              value=str(stub.guid)) from err
        self.stubs.append(stub)
        return interface

    def _protect(self, image: LoadedImage) -> None:
        """Give the image's pages its sections' permissions (code RX, data RW NX, rest R NX)."""
        pd0 = self.image.constants["PD0"]
        for pages in image.pe.load_plan(image.base):
            set_page_permissions(self._memory, pd0, pages.start, pages.size,
                                 writable=pages.writable, executable=pages.executable)
        for cpu in self._cpus:
            cpu.engine.flush_tlb()

    @property
    def in_place(self) -> bool:
        """Whether requests are handled in the comm buffer itself (PiSmmCore) or on a copy."""
        return self._memory.read(self.image.constants["BOOT_INFO"] + 0x60, 1, smm=True) != b"\0"

    @in_place.setter
    def in_place(self, value: bool) -> None:
        self._memory.write(self.image.constants["BOOT_INFO"] + 0x60,
                           struct.pack("<Q", int(value)), smm=True)

    def load_firmware(self, source: str | Path | bytes) -> FirmwareReport:
        """Load and dispatch every MM driver of a firmware volume or flash image.

        Traditional SMM drivers are written for edk2's PiSmmCore, which hands
        handlers the comm buffer in place (they check that it lies outside SMRAM)
        and maps DRAM in SMM: build the Machine with ``mode="traditional"`` (the
        default with ``firmware=``).

        Raises:
            ImageError: unreadable or unparsable firmware.
        """
        self._alive()
        data = _read_source(source, "firmware")

        def load(pe: bytes, name: str, standalone: bool) -> LoadedImage:
            return self.load_image(pe, name=name, standalone=standalone)

        def installed() -> set[uuid.UUID]:
            return ({r.guid for r in self.services.db.records}
                    | {r.guid for r in self.dxe_services.db.records})

        return dispatch_firmware(data, load, installed)

    def dispatch_drivers(self) -> CommResult:
        """Run every loaded driver's pending entry point (an MMI on gEventMmDispatchGuid)."""
        self._alive()
        return self.communicate(MM_DISPATCH_GUID, b"\x00", buffer_id=1)

    @property
    def images(self) -> list[LoadedImage]:
        """Every loaded driver, in load order."""
        return list(self.drivers.images)

    def symbolize(self, address: int) -> str | None:
        """``symbol+offset`` in the MM core image or a loaded driver."""
        found = self.image.symbolize(address)
        if found is not None:
            return found
        image = next((i for i in self.drivers.images if i.contains(address)), None)
        if image is not None:
            return image.symbolize(address)
        return self.services.thunks.name_of(address) if hasattr(self, "services") else None

    # -- snapshots -------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The whole state now (RAM, SMRAM, CPUs, devices, services), for :meth:`restore`.

        Raises:
            SnapshotError: a CPU is running, in SMM or has an SMI pending.
        """
        self._alive()
        return take_snapshot(self)

    def restore(self, snapshot: Snapshot) -> None:
        """Go back to ``snapshot`` (taken from this Machine); cost follows the pages changed since.

        Raises:
            SnapshotError: another Machine's or a released snapshot, or a CPU not idle.
        """
        self._alive()
        restore_snapshot(self, snapshot)

    # -- lifetime -------------------------------------------------------------------
    def close(self) -> None:
        """Release the CPU and memory; the Machine cannot be used afterwards."""
        if self._closed:
            return
        self._closed = True
        for cpu in self._cpus:
            cpu.close()

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
