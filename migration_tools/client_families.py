"""What each SCEP client family can do about EST, and so what moving its devices takes.

The family of a device is recognised at its SCEP contacts (scep.clients; `devices.scep_client`).
The table is docs/migration.md's "SCEP clients and EST", with its sources: keep the two together.
"""

from __future__ import annotations

from dataclasses import dataclass

EST_YES = "yes"
EST_SOME = "some versions"
EST_NO = "no"


@dataclass(frozen=True)
class FamilyFacts:
    """One client family: its name, whether it has an EST client, and the way forward for its devices."""

    name: str
    est_client: str  # EST_YES | EST_SOME | EST_NO
    route: str  # the next action for a device still on SCEP that runs this client
    sources: tuple[str, ...]
    host_alternative: bool = False  # no EST in this client, but its host can run one that has

    @property
    def moves_to_est(self) -> bool:
        """Whether mapping the device to an EST credential is the way forward (its client, or a new one on
        the same host, can use it)."""
        return self.est_client != EST_NO or self.host_alternative


_HOST_EST_CLIENTS = "`gateway client est`, strongSwan's `pki --est` or libest's estclient"

FAMILIES: dict[str, FamilyFacts] = {
    "apple": FamilyFacts(
        "Apple MDM (iOS, iPadOS, macOS)",
        EST_NO,
        "Apple's MDM has no EST payload (SCEP and ACME): keep it on SCEP, hardened (AES, SHA-256, a one-time "
        "or webhook challenge), or move it to ACME; give its group no SCEP sunset",
        (
            "https://developer.apple.com/documentation/devicemanagement/scep",
            "https://developer.apple.com/documentation/devicemanagement/acmecertificate",
        ),
    ),
    "windows": FamilyFacts(
        "Windows / Intune (NDES path)",
        EST_NO,
        "Intune's certificate profiles are SCEP and PKCS and Windows has no EST client: keep it on SCEP "
        "through the NDES path, hardened; give its group no SCEP sunset",
        ("https://learn.microsoft.com/en-us/mem/intune/protect/certificates-configure",),
    ),
    "cisco-ios": FamilyFacts(
        "Cisco IOS",
        EST_SOME,
        "newer Cisco software enrolls over EST (IOS XE on Catalyst 9800 controllers, IOS XR 25.1.1 and later): "
        "map it and point its trustpoint at EST after an upgrade; classic IOS stays on SCEP",
        (
            "https://www.cisco.com/c/en/us/td/docs/wireless/controller/9800/technical-reference/est-on-prem-dg.html",
            "https://www.cisco.com/c/en/us/td/docs/iosxr/cisco8000/security/25xx/configuration/guide/"
            "b-system-security-cg-cisco8000-25xx/m_sec-est-client-supp-pki.html",
        ),
    ),
    "certmonger": FamilyFacts(
        "certmonger",
        EST_NO,
        f"certmonger has no EST helper: install an EST client on the host ({_HOST_EST_CLIENTS}), then map it",
        (
            "Debian certmonger 0.79.17: /usr/lib/certmonger holds scep-submit, ipa-submit, dogtag-submit and "
            "local-submit, no EST helper (seen on the machine the gateway's tests run on)",
            "https://manpages.ubuntu.com/manpages/noble/man1/pki---est.1.html",
        ),
        host_alternative=True,
    ),
    "sscep": FamilyFacts(
        "sscep",
        EST_NO,
        f"sscep speaks SCEP only: install an EST client on the host ({_HOST_EST_CLIENTS}), then map it",
        ("https://github.com/certnanny/sscep", "https://github.com/cisco/libest"),
        host_alternative=True,
    ),
    "micromdm-scepclient": FamilyFacts(
        "micromdm scepclient",
        EST_NO,
        f"micromdm's scepclient speaks SCEP only: install an EST client on the host ({_HOST_EST_CLIENTS}), then map it",
        ("https://github.com/micromdm/scep",),
        host_alternative=True,
    ),
    "jscep": FamilyFacts(
        "jscep (Java)",
        EST_NO,
        "jscep speaks SCEP only: install an EST client on the host or in the application (Bouncy Castle's "
        "org.bouncycastle.est in bcpkix), then map it",
        ("https://github.com/jscep/jscep", "https://github.com/bcgit/bc-java (pkix: org/bouncycastle/est)"),
        host_alternative=True,
    ),
}

UNKNOWN = FamilyFacts(
    "unknown",
    "unknown",
    "its SCEP client is not recognised: find out what it runs (its User-Agent is in the report)",
    (),
)


def family_facts(family: str | None) -> FamilyFacts:
    """The facts of a family key (`devices.scep_client`); UNKNOWN for None or an unknown key."""
    return FAMILIES.get(family or "", UNKNOWN)
