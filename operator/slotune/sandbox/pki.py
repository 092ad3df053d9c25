"""Certificates for the local control plane, made with the `openssl` command.

The `openssl` CLI is on every machine this runs on, so no Python crypto dependency is needed.
EC P-256 keys keep generation fast (RSA-2048 takes noticeably longer on two cores) and are
accepted by every component, including as the service-account signing key (ES256).
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

CA_DAYS = 3650
LEAF_DAYS = 365


class PKIError(RuntimeError):
    pass


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def _openssl(args: Sequence[str], cwd: Path) -> None:
    exe = shutil.which("openssl")
    if exe is None:
        raise PKIError("the `openssl` command is needed to make the control plane's certificates")
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise PKIError(f"`openssl {' '.join(args)}` failed: {proc.stderr.strip()}")


def _new_key(path: Path) -> None:
    _openssl(
        ["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", str(path)],
        path.parent,
    )
    path.chmod(0o600)


def _subject(common_name: str, organizations: Sequence[str]) -> str:
    # Kubernetes reads the user from CN and the groups from O.
    return "".join(f"/O={org}" for org in organizations) + f"/CN={common_name}"


class PKI:
    """A throw-away CA and the leaf certificates signed by it, all under one directory."""

    def __init__(self, directory: Path, ca_name: str = "slotune-sandbox-ca") -> None:
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self.ca = KeyPair(self.dir / "ca.crt", self.dir / "ca.key")
        # A minimal config: the system openssl.cnf may add extensions of its own to `req -x509`,
        # and a duplicate extension is an error in OpenSSL 3.
        self._config = self.dir / "openssl.cnf"
        self._config.write_text(
            "[req]\ndistinguished_name = dn\n[dn]\n"
            "[v3_ca]\nbasicConstraints = critical,CA:TRUE\n"
            "keyUsage = critical,keyCertSign,cRLSign,digitalSignature\n"
            "subjectKeyIdentifier = hash\n"
        )
        _new_key(self.ca.key)
        _openssl(
            [
                "req",
                "-x509",
                "-new",
                "-sha256",
                "-key",
                str(self.ca.key),
                "-subj",
                f"/CN={ca_name}",
                "-days",
                str(CA_DAYS),
                "-config",
                str(self._config),
                "-extensions",
                "v3_ca",
                "-out",
                str(self.ca.cert),
            ],
            self.dir,
        )

    def leaf(
        self,
        name: str,
        common_name: str,
        organizations: Sequence[str] = (),
        *,
        server_names: Sequence[str] = (),
        server_ips: Sequence[str] = (),
    ) -> KeyPair:
        """A certificate for client auth, and for serving too when names or IPs are given."""
        pair = KeyPair(self.dir / f"{name}.crt", self.dir / f"{name}.key")
        csr = self.dir / f"{name}.csr"
        ext = self.dir / f"{name}.ext"
        _new_key(pair.key)
        _openssl(
            [
                "req",
                "-new",
                "-key",
                str(pair.key),
                "-subj",
                _subject(common_name, organizations),
                "-config",
                str(self._config),
                "-out",
                str(csr),
            ],
            self.dir,
        )
        usages = ["clientAuth"]
        lines = ["[v3]", "basicConstraints = critical,CA:FALSE"]
        lines.append("keyUsage = critical,digitalSignature,keyEncipherment")
        alt = [f"DNS:{n}" for n in server_names] + [f"IP:{ip}" for ip in server_ips]
        if alt:
            usages.insert(0, "serverAuth")
            lines.append("subjectAltName = " + ",".join(alt))
        lines.append("extendedKeyUsage = " + ",".join(usages))
        ext.write_text("\n".join(lines) + "\n")
        _openssl(
            [
                "x509",
                "-req",
                "-sha256",
                "-in",
                str(csr),
                "-CA",
                str(self.ca.cert),
                "-CAkey",
                str(self.ca.key),
                # Random serials: two sandboxes' certificates must never look like one another.
                "-set_serial",
                str(secrets.randbits(120)),
                "-days",
                str(LEAF_DAYS),
                "-extfile",
                str(ext),
                "-extensions",
                "v3",
                "-out",
                str(pair.cert),
            ],
            self.dir,
        )
        csr.unlink()
        ext.unlink()
        return pair

    def signing_key(self, name: str) -> KeyPair:
        """A bare key pair (public key in `cert`), e.g. for signing service-account tokens."""
        pair = KeyPair(self.dir / f"{name}.pub", self.dir / f"{name}.key")
        _new_key(pair.key)
        _openssl(["pkey", "-in", str(pair.key), "-pubout", "-out", str(pair.cert)], self.dir)
        return pair
