"""A small etcd v3 client over our own gRPC stack (`hbone.grpc.Channel`), for the config store."""

from microxds.etcd.client import EtcdClient, StoreURL, prefix_end

__all__ = ["EtcdClient", "StoreURL", "prefix_end"]
