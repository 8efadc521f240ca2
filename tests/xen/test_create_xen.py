"""Create on Xen: PV and HVM-style definitions, their Warnings, and what libxl refuses.

Nothing here is started: Debian's qemu-system-xen (an HVM guest's device model) is not in dom0.
"""

from xend_rest.hypervisor import convert

from .conftest import NODES

HVM = """<domain type='xen'>
  <name>{name}</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='xenfv'>hvm</type>
    <loader type='rom'>/usr/lib/xen-4.17/boot/hvmloader</loader>
    <boot dev='hd'/>
  </os>
  <features><acpi/><apic/><pae/><hap state='on'/></features>
  <clock offset='utc'/>
  <devices>
    <emulator type='qemu'>/usr/bin/qemu-system-i386</emulator>
    <graphics type='vnc' port='-1'/>
    <video><model type='cirrus'/></video>
    <memballoon model='xen'/>
  </devices>
</domain>"""


def create(rig, xml):
    return rig.api.post(f"{NODES}/create", convert.xml_to_dict(xml))


def test_pv_definition_is_kept_whole(rig, guests):
    name = guests.name("pv")
    extra = "<features><acpi/><apic/><pae/></features><clock offset='localtime'/><os>"
    response = create(rig, guests.xml(name).replace("<os>", extra))
    assert response.status == 201, response
    assert response.json["Warnings"] == []
    domain = rig.api.get(f"{NODES}/{name}/json").json["domain"]
    assert domain["os"]["type"]["@machine"] == "xenpv"


def test_hvm_style_definition_warns_of_what_libvirt_dropped(rig, guests):
    name = guests.name("hvm")
    response = create(rig, HVM.format(name=name))
    assert response.status == 201, response
    # libvirt 9.0 does not know <emulator type=...> (a later libvirt's attribute)
    assert response.json["Warnings"] == ["domain.devices.emulator.@type was dropped by libvirt"]
    domain = rig.api.get(f"{NODES}/{name}/json").json["domain"]
    assert domain["devices"]["graphics"]["@type"] == "vnc"


def test_what_libxl_refuses_is_406_with_its_message(rig, guests):
    name = guests.name("usb")
    response = create(rig, guests.xml(name, extra="\n    <input type='tablet' bus='usb'/>"))
    assert response.status == 406, response
    assert response.json["code"] == "definition_rejected"
    assert "usb" in response.json["message"]
