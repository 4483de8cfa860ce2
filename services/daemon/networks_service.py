"""The daemon's Networks gRPC service: translation to ``Networking``."""

from __future__ import annotations

from services.common.grpc import grpc_errors
from services.daemon.networking import Networking
from services.gen.skiff.daemon.v1 import (
    ConnectRequest,
    CreateNetworkRequest,
    DisconnectRequest,
    EndpointConfig,
    ListNetworksRequest,
    ListNetworksResponse,
    Network,
    NetworkAck,
    NetworkInspect,
    NetworkRef,
    NetworksBase,
    PruneNetworksRequest,
    PruneNetworksResponse,
)


class NetworksService(NetworksBase):
    def __init__(self, net: Networking) -> None:
        self.net = net

    @grpc_errors
    async def create(self, create_network_request: CreateNetworkRequest) -> Network:
        return await self.net.create(create_network_request)

    @grpc_errors
    async def list(self, list_networks_request: ListNetworksRequest) -> ListNetworksResponse:
        return ListNetworksResponse(networks=self.net.list())

    @grpc_errors
    async def inspect(self, network_ref: NetworkRef) -> NetworkInspect:
        return self.net.inspect(network_ref.id)

    @grpc_errors
    async def remove(self, network_ref: NetworkRef) -> NetworkAck:
        await self.net.remove(network_ref.id)
        return NetworkAck()

    @grpc_errors
    async def connect(self, connect_request: ConnectRequest) -> NetworkAck:
        r = connect_request
        await self.net.connect(r.network, r.container, r.config or EndpointConfig())
        return NetworkAck()

    @grpc_errors
    async def disconnect(self, disconnect_request: DisconnectRequest) -> NetworkAck:
        r = disconnect_request
        await self.net.disconnect(r.network, r.container, r.force)
        return NetworkAck()

    @grpc_errors
    async def prune(self, prune_networks_request: PruneNetworksRequest) -> PruneNetworksResponse:
        return PruneNetworksResponse(deleted=await self.net.prune())
