"""Every OID hapacs serves or sends, named as in the MIB modules.

The names are the MIB's own (camelCase), so `grep hapacsPeerName` finds the
MIB text, this file and the code that fills the object. Pure data: no pysnmp.
tests/test_mib.py checks that each `hapacs*` name here has the same OID in
etc/HAPACS-MIB.txt, and each `vrrpv3*` name the same as in VRRPV3-MIB.
"""

from __future__ import annotations

# RFC 5612's documentation Private Enterprise Number. An organisation with its
# own number changes it here and in etc/HAPACS-MIB.txt (MODULE-IDENTITY).
ENTERPRISE_NUMBER = 32473

Oid = tuple[int, ...]

enterprises: Oid = (1, 3, 6, 1, 4, 1)

# --- HAPACS-MIB -------------------------------------------------------------
hapacsMIB: Oid = enterprises + (ENTERPRISE_NUMBER,)
hapacsNotifications = hapacsMIB + (0,)
hapacsObjects = hapacsMIB + (1,)
hapacsAgent = hapacsMIB + (3,)          # our sysObjectID

hapacsNode = hapacsObjects + (1,)
hapacsNodeName = hapacsNode + (1,)
hapacsNodeState = hapacsNode + (2,)
hapacsNodePriority = hapacsNode + (3,)
hapacsNodeEffectivePriority = hapacsNode + (4,)
hapacsNodeMasterName = hapacsNode + (5,)
hapacsNodeMaintenance = hapacsNode + (6,)
hapacsNodeTimeInState = hapacsNode + (7,)
hapacsNodeClusterId = hapacsNode + (8,)
hapacsNodePreviousState = hapacsNode + (9,)
hapacsNodeLastReason = hapacsNode + (10,)
hapacsNodeSticky = hapacsNode + (11,)
hapacsNodeFaults = hapacsNode + (12,)

hapacsPeerEntry = hapacsObjects + (2, 1)
hapacsPeerName = hapacsPeerEntry + (2,)
hapacsPeerAddressType = hapacsPeerEntry + (3,)
hapacsPeerAddress = hapacsPeerEntry + (4,)
hapacsPeerState = hapacsPeerEntry + (5,)
hapacsPeerPriority = hapacsPeerEntry + (6,)
hapacsPeerLastHeard = hapacsPeerEntry + (7,)
hapacsPeerMaintenance = hapacsPeerEntry + (8,)

hapacsCheckEntry = hapacsObjects + (3, 1)
hapacsCheckName = hapacsCheckEntry + (2,)
hapacsCheckType = hapacsCheckEntry + (3,)
hapacsCheckStatus = hapacsCheckEntry + (4,)
hapacsCheckLatency = hapacsCheckEntry + (5,)
hapacsCheckMessage = hapacsCheckEntry + (6,)
hapacsCheckTimeInStatus = hapacsCheckEntry + (7,)
hapacsCheckWeight = hapacsCheckEntry + (8,)

hapacsCounters = hapacsObjects + (4,)
hapacsTransitions = hapacsCounters + (1,)
hapacsBecameMaster = hapacsCounters + (2,)
hapacsHeartbeatsSent = hapacsCounters + (3,)
hapacsHeartbeatsReceived = hapacsCounters + (4,)
hapacsDroppedShort = hapacsCounters + (5,)
hapacsDroppedLong = hapacsCounters + (6,)
hapacsDroppedMagic = hapacsCounters + (7,)
hapacsDroppedVersion = hapacsCounters + (8,)
hapacsDroppedCluster = hapacsCounters + (9,)
hapacsDroppedAuth = hapacsCounters + (10,)
hapacsDroppedMalformed = hapacsCounters + (11,)
hapacsDroppedReplay = hapacsCounters + (12,)
hapacsSplitBrains = hapacsCounters + (13,)
hapacsPeersLost = hapacsCounters + (14,)

# One counter per wire.DROP_CODES entry, in that order.
DROPPED_BY_CODE: dict[str, Oid] = {
    "short": hapacsDroppedShort, "long": hapacsDroppedLong, "magic": hapacsDroppedMagic,
    "version": hapacsDroppedVersion, "cluster": hapacsDroppedCluster, "auth": hapacsDroppedAuth,
    "malformed": hapacsDroppedMalformed, "replay": hapacsDroppedReplay,
}

hapacsVipEntry = hapacsObjects + (5, 1)
hapacsVipAddressType = hapacsVipEntry + (2,)
hapacsVipAddress = hapacsVipEntry + (3,)
hapacsVipPrefixLength = hapacsVipEntry + (4,)
hapacsVipInterface = hapacsVipEntry + (5,)
hapacsVipHeld = hapacsVipEntry + (6,)

# Who may lead (heartbeats, or an etcd lease): scalars
hapacsAuthority = hapacsObjects + (9,)
hapacsAuthorityKind = hapacsAuthority + (1,)
hapacsAuthorityHolder = hapacsAuthority + (2,)
hapacsAuthorityLeaseLeft = hapacsAuthority + (3,)
hapacsAuthorityEndpointsUp = hapacsAuthority + (4,)
hapacsAuthorityEndpoints = hapacsAuthority + (5,)

# balance: one row per (service, member), indexed by their positions in the configuration
hapacsBalanceMemberEntry = hapacsObjects + (7, 1)
hapacsBalanceServiceName = hapacsBalanceMemberEntry + (3,)
hapacsBalanceServiceActive = hapacsBalanceMemberEntry + (4,)
hapacsBalanceMemberName = hapacsBalanceMemberEntry + (5,)
hapacsBalanceMemberAddressType = hapacsBalanceMemberEntry + (6,)
hapacsBalanceMemberAddress = hapacsBalanceMemberEntry + (7,)
hapacsBalanceMemberState = hapacsBalanceMemberEntry + (8,)
hapacsBalanceMemberAssociations = hapacsBalanceMemberEntry + (9,)
hapacsBalanceMemberTotal = hapacsBalanceMemberEntry + (10,)

# bgp: the BGP session gate, with one row per bgp.protocols entry, indexed by its position
hapacsBgpReady = hapacsObjects + (8, 1)
hapacsBgpSessionEntry = hapacsObjects + (8, 2, 1)
hapacsBgpSessionName = hapacsBgpSessionEntry + (2,)
hapacsBgpSessionState = hapacsBgpSessionEntry + (3,)
hapacsBgpSessionTimeInState = hapacsBgpSessionEntry + (4,)

# accessible-for-notify: values that only travel in notifications
hapacsNotifyObjects = hapacsObjects + (6,)
hapacsSplitBrainWinner = hapacsNotifyObjects + (1,)
hapacsMisconfiguredAddressType = hapacsNotifyObjects + (2,)
hapacsMisconfiguredAddress = hapacsNotifyObjects + (3,)
hapacsMisconfiguredCause = hapacsNotifyObjects + (4,)
hapacsMisconfiguredMessage = hapacsNotifyObjects + (5,)

hapacsStateChange = hapacsNotifications + (1,)
hapacsCheckDown = hapacsNotifications + (2,)
hapacsCheckUp = hapacsNotifications + (3,)
hapacsPeerLost = hapacsNotifications + (4,)
hapacsSplitBrain = hapacsNotifications + (5,)
hapacsMisconfiguredPeer = hapacsNotifications + (6,)

# --- VRRPV3-MIB (RFC 6527) ----------------------------------------------------
vrrpv3MIB: Oid = (1, 3, 6, 1, 2, 1, 207)
vrrpv3NewMaster = vrrpv3MIB + (0, 1)

vrrpv3OperationsEntry = vrrpv3MIB + (1, 1, 1, 1)
vrrpv3OperationsMasterIpAddr = vrrpv3OperationsEntry + (3,)
vrrpv3OperationsPrimaryIpAddr = vrrpv3OperationsEntry + (4,)
vrrpv3OperationsStatus = vrrpv3OperationsEntry + (6,)
vrrpv3OperationsPriority = vrrpv3OperationsEntry + (7,)
vrrpv3OperationsAddrCount = vrrpv3OperationsEntry + (8,)
vrrpv3OperationsAdvInterval = vrrpv3OperationsEntry + (9,)
vrrpv3OperationsPreemptMode = vrrpv3OperationsEntry + (10,)
vrrpv3OperationsAcceptMode = vrrpv3OperationsEntry + (11,)
vrrpv3OperationsUpTime = vrrpv3OperationsEntry + (12,)
vrrpv3OperationsRowStatus = vrrpv3OperationsEntry + (13,)

vrrpv3AssociatedIpAddrEntry = vrrpv3MIB + (1, 1, 2, 1)
vrrpv3AssociatedIpAddrRowStatus = vrrpv3AssociatedIpAddrEntry + (2,)

vrrpv3Statistics = vrrpv3MIB + (1, 2)
vrrpv3RouterChecksumErrors = vrrpv3Statistics + (1,)
vrrpv3RouterVersionErrors = vrrpv3Statistics + (2,)
vrrpv3RouterVrIdErrors = vrrpv3Statistics + (3,)
vrrpv3GlobalStatisticsDiscontinuityTime = vrrpv3Statistics + (4,)

vrrpv3StatisticsEntry = vrrpv3Statistics + (5, 1)
vrrpv3StatisticsMasterTransitions = vrrpv3StatisticsEntry + (1,)
vrrpv3StatisticsNewMasterReason = vrrpv3StatisticsEntry + (2,)
vrrpv3StatisticsRcvdAdvertisements = vrrpv3StatisticsEntry + (3,)
vrrpv3StatisticsPacketLengthErrors = vrrpv3StatisticsEntry + (11,)
vrrpv3StatisticsRowDiscontinuityTime = vrrpv3StatisticsEntry + (12,)
vrrpv3StatisticsRefreshRate = vrrpv3StatisticsEntry + (13,)

# --- SNMPv2-MIB (RFC 3418) and SNMP-FRAMEWORK-MIB (RFC 3411) --------------------
system: Oid = (1, 3, 6, 1, 2, 1, 1)
sysDescr = system + (1,)
sysObjectID = system + (2,)
sysUpTime = system + (3,)
sysContact = system + (4,)
sysName = system + (5,)
sysLocation = system + (6,)
sysServices = system + (7,)
snmpTrapOID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1)

snmpEngine: Oid = (1, 3, 6, 1, 6, 3, 10, 2, 1)
snmpEngineID = snmpEngine + (1,)
snmpEngineBoots = snmpEngine + (2,)
snmpEngineTime = snmpEngine + (3,)
snmpEngineMaxMessageSize = snmpEngine + (4,)


def named(prefix: str) -> dict[str, Oid]:
    """Every OID above whose name starts with `prefix`, by name (for tests and docs)."""
    return {name: value for name, value in globals().items()
            if name.startswith(prefix) and isinstance(value, tuple)}
