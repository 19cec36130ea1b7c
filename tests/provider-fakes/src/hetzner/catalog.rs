//! The fake's fixed catalogue: a few real server types, locations and system images, so that
//! create requests are validated against names that exist at Hetzner. It must never grow into a
//! price list: prices are there only because the schema requires them.

/// A location with its one datacenter (Hetzner has several per location; one is enough here).
pub(crate) struct Location {
    pub id: u64,
    pub name: &'static str,
    pub description: &'static str,
    pub city: &'static str,
    pub country: &'static str,
    pub latitude: f64,
    pub longitude: f64,
    pub network_zone: &'static str,
    pub datacenter_id: u64,
    pub datacenter_name: &'static str,
    pub datacenter_description: &'static str,
}

pub(crate) const LOCATIONS: &[Location] = &[
    Location {
        id: 1,
        name: "fsn1",
        description: "Falkenstein DC Park 1",
        city: "Falkenstein",
        country: "DE",
        latitude: 50.47612,
        longitude: 12.370_071,
        network_zone: "eu-central",
        datacenter_id: 4,
        datacenter_name: "fsn1-dc14",
        datacenter_description: "Falkenstein 1 virtual DC 14",
    },
    Location {
        id: 2,
        name: "nbg1",
        description: "Nuremberg DC Park 1",
        city: "Nuremberg",
        country: "DE",
        latitude: 49.452_102,
        longitude: 11.076_665,
        network_zone: "eu-central",
        datacenter_id: 2,
        datacenter_name: "nbg1-dc3",
        datacenter_description: "Nuremberg 1 virtual DC 3",
    },
    Location {
        id: 3,
        name: "hel1",
        description: "Helsinki DC Park 1",
        city: "Helsinki",
        country: "FI",
        latitude: 60.169_855,
        longitude: 24.938_379,
        network_zone: "eu-central",
        datacenter_id: 3,
        datacenter_name: "hel1-dc2",
        datacenter_description: "Helsinki 1 virtual DC 2",
    },
    Location {
        id: 4,
        name: "ash",
        description: "Ashburn, VA",
        city: "Ashburn, VA",
        country: "US",
        latitude: 39.045_821,
        longitude: -77.487_073,
        network_zone: "us-east",
        datacenter_id: 5,
        datacenter_name: "ash-dc1",
        datacenter_description: "Ashburn virtual DC 1",
    },
];

pub(crate) struct ServerType {
    pub id: u64,
    pub name: &'static str,
    pub description: &'static str,
    pub cores: u32,
    pub memory_gb: f64,
    pub disk_gb: u64,
    pub architecture: &'static str,
    pub locations: &'static [&'static str],
    pub price_hourly: &'static str,
    pub price_monthly: &'static str,
}

pub(crate) const SERVER_TYPES: &[ServerType] = &[
    ServerType {
        id: 104,
        name: "cx22",
        description: "CX22",
        cores: 2,
        memory_gb: 4.0,
        disk_gb: 40,
        architecture: "x86",
        locations: &["fsn1", "nbg1", "hel1"],
        price_hourly: "0.0060",
        price_monthly: "3.7900",
    },
    ServerType {
        id: 22,
        name: "cpx11",
        description: "CPX 11",
        cores: 2,
        memory_gb: 2.0,
        disk_gb: 40,
        architecture: "x86",
        locations: &["fsn1", "nbg1", "hel1", "ash"],
        price_hourly: "0.0080",
        price_monthly: "4.9900",
    },
    ServerType {
        id: 45,
        name: "cax11",
        description: "CAX11",
        cores: 2,
        memory_gb: 4.0,
        disk_gb: 40,
        architecture: "arm",
        locations: &["fsn1", "nbg1", "hel1"],
        price_hourly: "0.0060",
        price_monthly: "3.7900",
    },
];

/// The location a server lands in when the request names none (Hetzner picks one itself).
pub(crate) const DEFAULT_LOCATION: &str = "fsn1";

/// An image a server can be created from: a system image of the catalogue, or a snapshot a test
/// registered (the baked Agent image).
#[derive(Clone, Debug)]
pub(crate) struct Image {
    pub id: u64,
    pub name: Option<String>,
    pub description: String,
    pub architecture: &'static str,
    pub kind: &'static str,
    pub os_flavor: &'static str,
    pub os_version: Option<String>,
    pub labels: std::collections::BTreeMap<String, String>,
    pub disk_size: f64,
    #[expect(
        clippy::struct_field_names,
        reason = "the name of the key in Hetzner's JSON"
    )]
    pub image_size: Option<f64>,
}

pub(crate) fn system_images() -> Vec<Image> {
    let system = |id, name: &str, architecture, flavor, version: &str, description: &str| Image {
        id,
        name: Some(name.to_owned()),
        description: description.to_owned(),
        architecture,
        kind: "system",
        os_flavor: flavor,
        os_version: Some(version.to_owned()),
        labels: std::collections::BTreeMap::new(),
        disk_size: 5.0,
        image_size: None,
    };
    vec![
        system(114_690_387, "debian-12", "x86", "debian", "12", "Debian 12"),
        system(114_690_389, "debian-12", "arm", "debian", "12", "Debian 12"),
        system(
            161_547_269,
            "ubuntu-24.04",
            "x86",
            "ubuntu",
            "24.04",
            "Ubuntu 24.04",
        ),
        system(
            161_547_270,
            "ubuntu-24.04",
            "arm",
            "ubuntu",
            "24.04",
            "Ubuntu 24.04",
        ),
    ]
}

pub(crate) fn location(name: &str) -> Option<&'static Location> {
    LOCATIONS.iter().find(|l| l.name == name)
}

pub(crate) fn server_type(name: &str) -> Option<&'static ServerType> {
    SERVER_TYPES
        .iter()
        .find(|t| t.name == name || t.id.to_string() == name)
}
