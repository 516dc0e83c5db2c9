"""The CA's messages as protobuf classes (the control plane's server and the
tests use them; the library's client uses `_codec`)."""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, struct_pb2

__all__ = ["CertificateRequest", "CertificateResponse"]


def _build() -> tuple[Any, Any]:
    pool = descriptor_pool.DescriptorPool()
    struct_file = descriptor_pb2.FileDescriptorProto()
    struct_pb2.DESCRIPTOR.CopyToProto(struct_file)
    pool.Add(struct_file)

    f = descriptor_pb2.FileDescriptorProto(
        name="proxyless_mesh/istio_ca.proto",
        package="istio.v1.auth",
        syntax="proto3",
        dependency=["google/protobuf/struct.proto"],
    )
    T = descriptor_pb2.FieldDescriptorProto
    req = f.message_type.add(name="IstioCertificateRequest")
    req.field.add(name="csr", number=1, type=T.TYPE_STRING, label=T.LABEL_OPTIONAL)
    req.field.add(name="validity_duration", number=3, type=T.TYPE_INT64, label=T.LABEL_OPTIONAL)
    req.field.add(
        name="metadata",
        number=4,
        type=T.TYPE_MESSAGE,
        label=T.LABEL_OPTIONAL,
        type_name=".google.protobuf.Struct",
    )
    resp = f.message_type.add(name="IstioCertificateResponse")
    resp.field.add(name="cert_chain", number=1, type=T.TYPE_STRING, label=T.LABEL_REPEATED)
    resp.field.add(name="trust_bundle", number=100, type=T.TYPE_STRING, label=T.LABEL_REPEATED)
    pool.Add(f)
    return (
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateRequest")
        ),
        message_factory.GetMessageClass(
            pool.FindMessageTypeByName("istio.v1.auth.IstioCertificateResponse")
        ),
    )


#: Message classes (protobuf `Message` subclasses; typed Any: built at runtime).
CertificateRequest, CertificateResponse = _build()
