//! Credentials-socket address: any bytes parse or fail without panicking, only well-formed
//! `<random>/unit/<unit>/<id>` addresses pass, and those give back their unit and id.

use proptest::prelude::*;

use crate::config::is_credential_id;
use crate::server::creds::parse_address;

proptest! {
    #[test]
    fn any_address_never_panics_and_what_passes_is_well_formed(
        parts in prop::collection::vec(
            prop_oneof![
                Just(b"/".to_vec()),
                Just(b"unit".to_vec()),
                Just(b"app.service".to_vec()),
                Just(b".".to_vec()),
                Just(b"..".to_vec()),
                prop::collection::vec(any::<u8>(), 0..6),
            ],
            0..12,
        ),
    ) {
        let address = parts.concat();
        if let Ok(request) = parse_address(&address) {
            prop_assert!(request.unit.contains('.') && request.unit.len() <= 255);
            prop_assert!(request.unit.bytes().all(|b| b.is_ascii_graphic() && b != b'/'));
            prop_assert!(is_credential_id(&request.id));
            let text = String::from_utf8(address).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let tail = format!("/unit/{}/{}", request.unit, request.id);
            prop_assert!(text.ends_with(&tail));
        }
    }

    #[test]
    fn well_formed_addresses_give_back_unit_and_id(
        random in "[0-9a-f]{16}",
        unit in "[a-zA-Z0-9@_:.-]{1,20}\\.(service|socket|mount)",
        id in "[!-.0-~]{1,40}",
    ) {
        let address = format!("{random}/unit/{unit}/{id}");
        let got = parse_address(address.as_bytes());
        if id == "." || id == ".." {
            prop_assert!(got.is_err());
        } else {
            let request = got.map_err(|e| TestCaseError::fail(format!("{address}: {e}")))?;
            prop_assert_eq!(request.unit, unit);
            prop_assert_eq!(request.id, id);
        }
    }
}
