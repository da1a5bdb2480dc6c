"""Add-on preferences: the backend (address, start command, timeouts) and how frames are stored."""

# (no "from __future__ import annotations": Blender reads property annotations at registration)

import bpy
from bpy.props import EnumProperty, FloatProperty, IntProperty, StringProperty


class FFAvatarPreferences(bpy.types.AddonPreferences):
    bl_idname = __package__

    backend_address: StringProperty(
        name="Backend Address", default="tcp://127.0.0.1:5557",
        description="ZeroMQ endpoint of the FFAvatar backend (tcp://host:port)")
    backend_python: StringProperty(
        name="Backend Python", subtype="FILE_PATH", default="",
        description="Python of an environment with ffavatar installed (e.g. .venv/bin/python); used by Start")
    backend_args: StringProperty(
        name="Backend Arguments", default="-m ffavatar_backend serve --device auto",
        description="Arguments after the Python; --bind is added from the address when absent")
    timeout: FloatProperty(
        name="Timeout", default=10.0, min=1.0, max=600.0, unit="TIME_ABSOLUTE",
        description="Seconds without an answer before the backend counts as gone")
    curve_server_key: StringProperty(
        name="Server Public Key", subtype="FILE_PATH", default="",
        description="CurveZMQ: the server's public key file (server.key), for a backend on another machine")
    curve_client_secret: StringProperty(
        name="Client Secret Key", subtype="FILE_PATH", default="",
        description="CurveZMQ: this client's key pair file (NAME.key_secret) the server allows")
    frame_format: EnumProperty(
        name="Frame Format", default="PNG",
        items=[("PNG", "PNG", "Lossless frames (larger, alpha possible)"),
               ("JPEG", "JPEG", "Smaller frames, faster to send")])
    jpeg_quality: IntProperty(name="JPEG Quality", default=90, min=1, max=100)
    frames_location: EnumProperty(
        name="Frames Folder", default="USER",
        items=[("USER", "Extension Folder", "The extension's user folder (always writable)"),
               ("BLEND", "Next to .blend", "//ffavatar_frames/<run> next to the saved .blend file")])

    def draw(self, context):
        layout = self.layout
        col = layout.column()
        col.prop(self, "backend_address")
        col.prop(self, "backend_python")
        col.prop(self, "backend_args")
        col.prop(self, "timeout")
        box = col.box()
        box.label(text="Remote backend (CurveZMQ encryption)")
        box.prop(self, "curve_server_key")
        box.prop(self, "curve_client_secret")
        col.separator()
        row = col.row()
        row.prop(self, "frame_format", expand=True)
        if self.frame_format == "JPEG":
            col.prop(self, "jpeg_quality")
        col.prop(self, "frames_location")


classes = (FFAvatarPreferences,)
